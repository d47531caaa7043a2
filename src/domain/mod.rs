//! The pure conversation domain: definitions, per-contact state, the state
//! machine and its transitions. No IO, no wall clock, no async.

pub mod coupon;
pub mod definition;
pub mod driver;
pub mod engine;
pub mod event;
pub mod experiment;
pub mod state;
pub mod time;
pub mod transition;
pub mod window;

pub use coupon::CouponPools;
pub use definition::Definitions;
pub use engine::{Effects, Engine, Folded, TimerChange};
pub use event::{Event, EventError};
pub use state::ContactState;
pub use time::{Duration, MaybeTimestamp, Timestamp};
pub use transition::{Transition, TransitionKind};
