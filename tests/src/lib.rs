//! The test cluster: the real Kubernetes control plane and node built on this machine
//! ([`controlplane`], [`node`]), and [`cluster::TestCluster`], a namespace of its own on
//! it (or on an external cluster) for each test.
//!
//! See `tests/README.md`.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod controlplane;
pub mod node;
