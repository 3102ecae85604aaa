//! What every request reads: users, gateways with their pools, limits and timeouts.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::auth::{User, Users};
use crate::config::{Config, Limits, Timeouts};
use crate::error::{ErrorKind, ProxyError};
use crate::gateway_match::{GatewayTarget, TargetUrl};
use crate::pool::{GatewayPool, PoolSettings};

/// Built once from the config; shared by all connections.
#[derive(Debug)]
pub struct State {
    pub users: Users,
    pub gateways: Vec<Gateway>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// One permit per request being proxied (`limits.max_concurrent_requests`).
    /// `try_acquire` is a single atomic operation: shedding costs no lock.
    pub in_flight: Semaphore,
}

/// A configured gateway and its connection pool.
#[derive(Debug)]
pub struct Gateway {
    pub target: GatewayTarget,
    pub org_id: Option<String>,
    /// The `Host` header value sent when the caller gives none.
    pub authority: String,
    pub pool: Arc<GatewayPool>,
}

impl State {
    /// Needs a running tokio runtime: each pool starts its eviction task.
    pub fn new(config: &Config) -> Self {
        let settings = PoolSettings {
            max_idle: config.pool.max_idle_per_gateway,
            idle_timeout: config.pool.idle_timeout,
            connect_timeout: config.timeouts.connect,
        };
        let gateways = config
            .gateways
            .iter()
            .map(|g| Gateway {
                target: g.target.clone(),
                org_id: g.org_id.clone(),
                authority: g.target.authority(),
                // The bracketed IPv6 form is what `lookup_host` parses.
                pool: GatewayPool::new(format!("{}:{}", g.target.host, g.target.port), settings),
            })
            .collect();

        State {
            users: Users::new(&config.users),
            gateways,
            limits: config.limits.clone(),
            timeouts: config.timeouts.clone(),
            in_flight: Semaphore::new(config.limits.max_concurrent_requests),
        }
    }

    /// The first gateway, in config order, that contains `target` and that
    /// `user` may reach. A gateway of another org is treated exactly like
    /// no gateway, so that a 403 does not reveal which URLs exist.
    pub fn match_gateway(&self, target: &TargetUrl, user: &User) -> Result<&Gateway, ProxyError> {
        self.gateways
            .iter()
            .find(|g| g.target.matches(target) && org_allows(g, user))
            .ok_or_else(|| ProxyError::bare(ErrorKind::Forbidden))
    }
}

fn org_allows(gateway: &Gateway, user: &User) -> bool {
    match &gateway.org_id {
        None => true,
        Some(org) => user.org_id.as_deref() == Some(org.as_str()),
    }
}
