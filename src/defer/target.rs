//! What the deliverers of a route need of it, handed over again by each reload: its `defer:`,
//! its upstream and caps, the metrics they count in, the buffering budget.

use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use super::DeferMetrics;
use crate::budget::Budget;
use crate::config::DeferConfig;
use crate::limit::ConcurrencyLimit;
use crate::proxy::Upstream;

/// What a worker needs of its route, swapped by a reload (see `Deliveries::retarget`).
#[derive(Debug)]
pub(crate) struct DeliveryTarget {
    /// The route's `defer:`.
    pub(crate) config: DeferConfig,
    /// Where tasks go.
    pub(crate) upstream: Arc<Upstream>,
    /// The route's own cap.
    pub(crate) route_cap: Option<ConcurrencyLimit>,
    /// `sluice_inflight{route}`.
    pub(crate) route_inflight: Gauge,
    /// `sluice_inflight{upstream}`.
    pub(crate) upstream_inflight: Gauge,
    /// `sluice_upstream_duration_seconds{route}`.
    pub(crate) upstream_duration: Histogram,
    /// `sluice_deferred_total` and `sluice_deferred_delivery_seconds`.
    pub(crate) metrics: DeferMetrics,
    /// `server.max_buffered_bytes`: a body read for its delivery is held within it.
    pub(crate) budget: Arc<Budget>,
}
