//! The control plane's decisions, free of I/O: task life, node health, task issuing.

pub mod certificates;
pub mod desired;
pub mod enrollment;
pub mod health;
pub mod issue;
pub mod lease;
pub mod lifecycle;
pub mod log_limit;
