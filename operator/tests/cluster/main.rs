//! Tests against a real Kubernetes control plane (kube-apiserver, kube-controller-manager,
//! kube-scheduler, etcd and a kwok node), started by `cargo xtask test`.

#![allow(clippy::unwrap_used)] // tests: a failed step should fail the test loudly

mod changes;
mod chart;
mod crd;
mod fleet;
mod harness;
mod lifecycle;
mod operator;
mod pods;
mod poison;
mod scaling;
mod support;
mod workloads;
