//! Builds the backend for each `Backend` object.

use std::sync::Arc;

use async_trait::async_trait;

use super::kubernetes::KubernetesBackend;
use super::{Backend, BackendError, BackendFactory};
use crate::api::backend::{Backend as BackendObject, BackendType};

/// The production factory: `kubernetes` backends are built in; the other types are not
/// yet, and are rejected with an `InvalidConfig` error naming `spec.type`.
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
        match object.spec.type_ {
            BackendType::Kubernetes => Ok(Arc::new(KubernetesBackend::new(self.client.clone(), object)?)),
            other @ (BackendType::Ssh | BackendType::Aws | BackendType::Lambda) => {
                Err(BackendError::InvalidConfig(format!(
                    "spec.type: backend type {:?} is not supported by this build (supported: \"kubernetes\")",
                    other.as_str()
                )))
            }
        }
    }
}
