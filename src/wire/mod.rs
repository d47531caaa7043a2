//! Encodings at the edge: JSON lines and protobuf for events and transitions,
//! and a one-line text form of a transition for people and golden tests. All
//! transition encodings print a [`view::View`].

pub mod json;
pub mod proto;
pub mod text;
pub mod view;

pub use view::TRIGGER_STEP;
