//! One module per subcommand.

pub mod analyze;
pub mod check;
pub mod consume;
pub mod control;
pub mod demo;
pub mod export;
pub mod import;
pub mod kvm;
pub mod record_kernel;
pub mod report;
pub mod sim;
