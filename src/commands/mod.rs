//! The one-shot commands behind the `vigil` binary's subcommands (the daemon lives elsewhere).

pub mod bench;
pub mod config_reference;
pub mod demo;
pub mod inspect;
pub mod publish;
pub mod retrain;
pub mod rollback;
pub mod score;
pub mod wrap;
