//! The test control plane: an in-memory Kubernetes API double and a process kubelet.
//!
//! See `tests/README.md` for what is modelled and what is not.
#![forbid(unsafe_code)]

pub mod apiserver;
pub mod cluster;
pub mod controlplane;
pub mod kubelet;
pub mod node;
