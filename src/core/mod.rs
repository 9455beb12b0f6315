//! Pure, sans-IO decisions: observed objects, offers and `now` in; actions out.
//! No client, no clock.

pub mod policy;
