//! The [`Harness`] every conformance case receives: a store under test, a way to open it
//! again on the same data (for the restart cases), and what the store lives on.
//!
//! # Invariants
//!
//! - The store is dropped before the resources it lives on (a temporary directory, an etcd
//!   process), so a backend never outlives its data.

use std::any::Any;
use std::future::Future;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::{DynStore, Result};

type Opener = Arc<dyn Fn() -> BoxFuture<'static, Result<DynStore>> + Send + Sync>;

/// A store under test, a way to reopen it on the same data, and what it lives on.
pub struct Harness {
    // Field order is drop order: the store goes before what it lives on.
    store: Option<DynStore>,
    open: Opener,
    resources: Vec<Box<dyn Any + Send + Sync>>,
}

impl Harness {
    /// Opens the store with `open`, which must open the same data each time it is called.
    pub async fn new<F, Fut>(open: F) -> Result<Harness>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<DynStore>> + Send + 'static,
    {
        let open: Opener = Arc::new(move || open().boxed());
        let store = open().await?;
        Ok(Harness {
            store: Some(store),
            open,
            resources: Vec::new(),
        })
    }

    /// Keeps `resource` alive as long as the harness (after the store is dropped).
    pub fn keep(mut self, resource: impl Any + Send + Sync) -> Harness {
        self.resources.push(Box::new(resource));
        self
    }

    /// The store. Clones must be dropped before [`Harness::reopen`].
    pub fn store(&self) -> DynStore {
        match &self.store {
            Some(store) => store.clone(),
            None => panic!("the harness has no open store (a reopen failed)"),
        }
    }

    /// Closes the store (drops the harness's handle) and opens it again on the same data.
    pub async fn reopen(&mut self) -> Result<DynStore> {
        self.store = None;
        let store = (self.open)().await?;
        self.store = Some(store.clone());
        Ok(store)
    }
}
