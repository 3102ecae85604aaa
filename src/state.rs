//! What requests read: settings shared by all workers, and each worker's own pools.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::auth::{User, Users};
use crate::config::{Config, GatewayConfig, Limits, Timeouts};
use crate::error::{ErrorKind, ProxyError};
use crate::gateway_match::{GatewayTarget, Scheme, TargetUrl};
use crate::in_flight::InFlightCap;
use crate::metrics::{Registry, Route, WorkerMetrics};
use crate::observe::RequestIds;
use crate::pool::{GatewayPool, GatewayTls, PoolSettings};
use crate::tls_client;

/// Built once from the config; shared by every worker thread.
#[derive(Debug)]
pub struct Shared {
    pub users: Users,
    pub gateways: Vec<Gateway>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// Requests being proxied, across all workers
    /// (`limits.max_concurrent_requests`).
    pub in_flight: Arc<InFlightCap>,
    pool: PoolSettings,
    /// Kept across reloads, so counters never reset.
    pub registry: Arc<Registry>,
    /// `GET /metrics` on the main listener (`metrics.enabled` without
    /// `metrics.listen`).
    pub metrics_on_main: bool,
    /// Every n-th request is access-logged; `None` when the log is off.
    access_log_every: Option<u64>,
}

/// A configured gateway: where it is and who may reach it.
#[derive(Debug)]
pub struct Gateway {
    /// As written in the config: the gateway's name in metrics and logs.
    pub url: String,
    pub target: GatewayTarget,
    pub org_id: Option<String>,
    /// The `Host` header value sent when the caller gives none.
    pub host: http::HeaderValue,
    /// `host:port` to resolve; the bracketed IPv6 form is what
    /// `lookup_host` parses.
    address: String,
    tls: Option<GatewayTls>,
}

/// One worker's state: the shared settings and its own connection pools,
/// so that a request and its gateway connection stay on one thread.
#[derive(Debug)]
pub struct State {
    pub shared: Arc<Shared>,
    /// In the same order as `shared.gateways`.
    pools: Vec<Arc<GatewayPool>>,
    pub metrics: Arc<WorkerMetrics>,
    pub request_ids: RequestIds,
    access_log_seq: AtomicU64,
}

impl Shared {
    /// Fails, naming the key, when a gateway's TLS files are unusable.
    pub fn new(config: &Config, registry: Arc<Registry>) -> Result<Shared, String> {
        let gateways = config
            .gateways
            .iter()
            .enumerate()
            .map(|(i, g)| gateway(g).map_err(|e| format!("gateways[{i}]: {e}")))
            .collect::<Result<_, _>>()?;

        Ok(Shared {
            users: Users::new(&config.users),
            gateways,
            limits: config.limits.clone(),
            timeouts: config.timeouts.clone(),
            in_flight: Arc::new(InFlightCap::new(config.limits.max_concurrent_requests)),
            pool: PoolSettings {
                max_idle: config.pool.max_idle_per_gateway,
                idle_timeout: config.pool.idle_timeout,
                connect_timeout: config.timeouts.connect,
                h2_max_streams: config.pool.h2_max_streams_per_connection,
                max_response_headers: config.limits.max_response_header_count,
            },
            registry,
            metrics_on_main: config.metrics.enabled && config.metrics.listen.is_none(),
            // A sample rate r logs every (1/r)-th request: deterministic,
            // and no random numbers on the hot path.
            access_log_every: config
                .log
                .access_log
                .then(|| (1.0 / config.log.access_log_sample).round().max(1.0) as u64),
        })
    }
}

impl State {
    /// Needs the worker's tokio runtime: each pool starts its eviction task.
    pub fn for_worker(shared: Arc<Shared>, metrics: Arc<WorkerMetrics>) -> State {
        let pools = shared
            .gateways
            .iter()
            .map(|g| {
                let stats = metrics.gateway(&g.url);
                GatewayPool::new(g.address.clone(), g.tls.clone(), shared.pool, stats)
            })
            .collect();
        State {
            shared,
            pools,
            metrics,
            request_ids: RequestIds::new(),
            access_log_seq: AtomicU64::new(0),
        }
    }

    pub fn pool(&self, index: usize) -> Option<&GatewayPool> {
        self.pools.get(index).map(AsRef::as_ref)
    }

    /// Whether this request is one the access log samples. Only
    /// `/api/proxy` requests are logged: health checks and scrapes would
    /// drown them.
    pub fn access_log_sampled(&self, route: Route) -> bool {
        let Some(every) = self.shared.access_log_every else {
            return false;
        };
        route == Route::Proxy && self.access_log_seq.fetch_add(1, Ordering::Relaxed) % every == 0
    }

    /// The first gateway, in config order, that contains `target` and that
    /// `user` may reach, with this worker's pool for it. A gateway of
    /// another org is treated exactly like no gateway, so that a 403 does
    /// not reveal which URLs exist.
    pub fn match_gateway(
        &self,
        target: &TargetUrl,
        user: &User,
    ) -> Result<(usize, &Gateway, &GatewayPool), ProxyError> {
        self.shared
            .gateways
            .iter()
            .zip(&self.pools)
            .enumerate()
            .find(|(_, (g, _))| g.target.matches(target) && org_allows(g, user))
            .map(|(i, (g, pool))| (i, g, pool.as_ref()))
            .ok_or_else(|| ProxyError::bare(ErrorKind::Forbidden))
    }
}

/// A worker's current [`State`], swapped whole on reload. Each request
/// takes the Arc once, so it runs start to end on one state; the lock is
/// this worker's alone and is held only to clone or swap.
#[derive(Debug)]
pub struct StateCell(RwLock<Arc<State>>);

impl StateCell {
    pub fn new(state: State) -> StateCell {
        StateCell(RwLock::new(Arc::new(state)))
    }

    pub fn load(&self) -> Arc<State> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn store(&self, state: State) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(state);
    }
}

/// Each gateway whose CA, client certificate or name is unusable, as
/// `gateways[i]: problem`: what `--check-config` finds beyond the file's
/// own keys, the same checks start-up makes.
pub fn gateway_problems(config: &Config) -> Vec<String> {
    let check =
        |(i, g): (usize, &GatewayConfig)| gateway(g).err().map(|e| format!("gateways[{i}]: {e}"));
    config
        .gateways
        .iter()
        .enumerate()
        .filter_map(check)
        .collect()
}

fn gateway(config: &GatewayConfig) -> Result<Gateway, String> {
    let target = &config.target;
    let tls = match target.scheme {
        Scheme::Http => None,
        Scheme::Https => Some(gateway_tls(config)?),
    };
    let host = http::HeaderValue::from_str(&target.authority())
        .map_err(|_| "url: its host is not a valid Host header".to_owned())?;
    Ok(Gateway {
        url: config.url.clone(),
        target: target.clone(),
        org_id: config.org_id.clone(),
        host,
        address: format!("{}:{}", target.host, target.port),
        tls,
    })
}

fn gateway_tls(config: &GatewayConfig) -> Result<GatewayTls, String> {
    if config.insecure_skip_verify {
        tracing::warn!(
            url = %config.url,
            "insecure_skip_verify: this gateway's certificate is not checked"
        );
    }
    let client = tls_client::client_config(config)?;
    let server_name = rustls::pki_types::ServerName::try_from(config.target.host_bare().to_owned())
        .map_err(|_| {
            format!(
                "{} is not a valid TLS server name",
                config.target.host_bare()
            )
        })?;
    Ok(GatewayTls {
        config: client,
        server_name,
    })
}

fn org_allows(gateway: &Gateway, user: &User) -> bool {
    match &gateway.org_id {
        None => true,
        Some(org) => user.org_id.as_deref() == Some(org.as_str()),
    }
}
