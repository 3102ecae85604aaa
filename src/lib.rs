//! gwproxy: the Tyk Dashboard's `POST /api/proxy` endpoint as a standalone server.
//!
//! A request's path through the code: [`server`] accepts the connection,
//! [`connection`] serves HTTP/1.1 or h2 on it, [`service`] routes and runs
//! the proxy flow — [`auth`], [`proxy_request`], [`gateway_match`],
//! [`gateway_request`], [`forward`] over a [`pool`], each body read by
//! [`body`] — and [`envelope`] or [`error`] writes the answer. [`config`]
//! and [`cli`] are start-up; [`tls_server`] and [`tls_client`] hold both
//! sides' TLS.

#![forbid(unsafe_code)]

pub mod auth;
pub mod body;
pub mod cli;
pub mod config;
pub mod connection;
pub mod envelope;
pub mod error;
pub mod forward;
pub mod gateway_match;
pub mod gateway_request;
pub mod h2_conns;
pub mod in_flight;
pub mod json_check;
pub mod metrics;
pub mod metrics_endpoint;
pub mod normal_url;
pub mod observe;
pub mod observed_io;
pub mod pool;
pub mod proxy_request;
pub mod server;
pub mod service;
pub mod state;
pub mod tls_client;
pub mod tls_server;
