//! A process kubelet: runs the pods bound to its node as local processes.
pub mod backoff;
pub mod env;
pub mod images;
pub mod process;
