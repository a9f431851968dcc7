//! Deferred delivery in a build without Redis: [`RouteDefer`] and [`Deliveries`] are types with
//! no value. Config validation refuses `defer` in such a build, so no route has one; the code
//! that would use them compiles unchanged (see `crate::defer`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;

use super::task::{Counts, DeadTask, Deferred, IdempotencyKey, Refused, StoredRequest};
use super::{DeferMetrics, DeliveryTarget, TaskId, TaskStatus};
use crate::budget::Budget;
use crate::config::DeferConfig;
use crate::store::Store;

/// No deferring route: there is none in a build without Redis.
#[derive(Debug)]
pub(crate) enum RouteDefer {}

/// No deliverers.
#[derive(Debug)]
pub(crate) enum Deliveries {}

impl RouteDefer {
    /// Never called: there is no task store to defer to.
    pub(crate) fn new(
        _: &Arc<str>,
        _: DeferConfig,
        (store, _): (Arc<Store>, Duration),
        _: Arc<Budget>,
        _: DeferMetrics,
    ) -> RouteDefer {
        match *store {}
    }

    pub(crate) fn store(&self) -> &Arc<Store> {
        match *self {}
    }

    pub(crate) fn config(&self) -> &DeferConfig {
        match *self {}
    }

    pub(crate) fn metrics(&self) -> &DeferMetrics {
        match *self {}
    }

    pub(crate) async fn status(&self, _: &TaskId) -> Result<Option<TaskStatus>, Infallible> {
        match *self {}
    }

    pub(crate) async fn named(&self, _: &IdempotencyKey) -> Result<Option<Deferred>, Refused> {
        match *self {}
    }

    pub(crate) async fn accept(&self, _: StoredRequest) -> Result<Deferred, Refused> {
        match *self {}
    }

    pub(crate) async fn dead(&self, _: usize) -> Result<Vec<DeadTask>, Infallible> {
        match *self {}
    }

    pub(crate) async fn requeue(&self, _: Option<&[TaskId]>) -> Result<u64, Infallible> {
        match *self {}
    }
}

impl Deliveries {
    /// Never called: there is no store to deliver from.
    pub(crate) fn start(
        _: &Arc<str>,
        store: &Arc<Store>,
        _: DeliveryTarget,
        _: &Handle,
    ) -> Deliveries {
        match **store {}
    }

    pub(crate) fn serves(&self, _: &Arc<Store>) -> bool {
        match *self {}
    }

    pub(crate) fn retarget(&self, _: DeliveryTarget) {
        match *self {}
    }

    pub(crate) fn counts(&self) -> Option<Counts> {
        match *self {}
    }

    pub(crate) async fn stop(&self, _: Duration) {
        match *self {}
    }
}
