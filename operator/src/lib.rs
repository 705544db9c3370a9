//! cqrs-operator: runs `CqrsApp`s on Kubernetes or on one machine.

pub mod crd;
pub mod manifest;
pub mod validate;

#[cfg(test)]
pub(crate) mod testing;
