//! [`Store`] in a build without Redis: a type with no value (see `crate::store`).

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use tokio::runtime::Handle;

use crate::config::Config;

/// No store: nothing makes one in a build without Redis.
#[derive(Debug)]
pub enum Store {}

impl Store {
    /// No limit has `scope: global` (config validation refuses it): `None`.
    pub(crate) fn for_limits(
        _: &Config,
        _: Option<&Arc<Store>>,
        _: Option<&Handle>,
        _: &Counter,
    ) -> Option<Arc<Store>> {
        None
    }

    /// No route defers (config validation refuses it): `None`.
    pub(crate) fn for_tasks(
        _: &Config,
        _: Option<&Arc<Store>>,
        _: Option<&Handle>,
        _: &Counter,
    ) -> Option<Arc<Store>> {
        None
    }
}
