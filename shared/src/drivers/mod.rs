//! What runs the services: the Lambda functions ([`lambda`]), the local pipeline the CLI uses
//! ([`pipeline`]), the events both accept ([`events`]), and the demo's sample data ([`sample`]).

pub mod events;
pub mod lambda;
pub mod pipeline;
pub mod sample;
