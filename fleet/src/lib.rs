//! What lb-dns, healthd and mta share: the fleet model and its validation,
//! the health-feed types, and the runtime pieces every daemon uses.

pub mod accept;
pub mod admin;
pub mod certificate;
pub mod clock;
pub mod clusters_api;
pub mod config;
pub mod control;
pub mod daemon;
pub mod egress;
pub mod error_chain;
pub mod event;
pub mod feed;
pub mod fs;
pub mod live;
pub mod load;
pub mod locate;
pub mod metrics;
pub mod model;
pub mod password;
pub mod rate;
pub mod secret;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tls;
pub mod validate;
pub mod vault;

pub use control::Control;
pub use egress::{EgressPool, EgressRoute, EgressSource, PoolEntry};
pub use error_chain::error_chain;
pub use live::{Live, Reloadable, StartupOnly};
pub use load::{load_fleet, parse_fleet, ConfigError, Problem};
pub use model::{Account, Cluster, Credential, Fleet, Mta, Webhook, WhenAllDown};
pub use rate::RateLimit;
