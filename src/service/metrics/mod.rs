//! Prometheus metrics of a service-mode process: the metric families and the per-service
//! handles the data path bumps (`families`), and [`MetricsServer`], a small HTTP server on its
//! own thread that answers `GET /metrics` (`http`).

pub(crate) mod families;
pub(crate) mod http;

pub use families::*;
pub use http::MetricsServer;
