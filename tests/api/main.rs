//! Integration tests: the receiver over real HTTP, and the built binary as a process.

mod binary;
mod callback;
mod commands;
mod deadline;
mod disk;
mod errors;
mod family_binary;
mod fleet;
mod forward;
mod hardening;
mod helpers;
mod journal;
mod journal_binary;
mod journal_faults;
mod log_records;
mod messages;
mod messages_page;
mod properties;
mod redis_stream;
mod settings_layers;
mod shutdown;
mod sql;
mod sql_family;
mod statistics;
mod stats;
mod status_page;
