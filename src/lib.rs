//! access-bot: GitLab access-request issues in, finished work in Zendesk and
//! Google Groups out.
//!
//! The pure core (`request`, `approval`, `plan`, `marker`, `report`, `render`)
//! knows nothing of HTTP. Adapters (`gitlab`, `zendesk`, `google`, `okta`) sit
//! behind async traits; the bot reaches account systems and group directories
//! through their ports (`accounts`, `groups`); `bot` runs the loop; `sandbox`
//! fakes the services.

pub mod accounts;
pub mod approval;
pub mod bot;
pub mod check;
pub mod cli;
pub mod comment;
pub mod config;
#[cfg(feature = "sandbox")]
pub mod demo;
pub mod directory;
pub mod gitlab;
pub mod google;
pub mod groups;
pub mod http;
pub mod identity;
pub mod jwt;
pub mod listen;
pub mod marker;
pub mod metrics;
pub mod notify;
pub mod okta;
pub mod plan;
pub mod policy;
pub mod progress;
pub mod rehearsal;
pub mod render;
pub mod report;
pub mod request;
// The fakes' handlers return early with a ready HTTP error response; boxing it
// would only add noise to test-only code.
#[cfg(feature = "sandbox")]
#[allow(clippy::result_large_err)]
pub mod sandbox;
pub mod seats;
pub mod secret;
pub mod store;
pub mod zendesk;
