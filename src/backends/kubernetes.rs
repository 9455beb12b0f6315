//! Pods in a Kubernetes cluster as machines.
