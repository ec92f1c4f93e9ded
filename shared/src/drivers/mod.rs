//! What runs the services: the Lambda functions ([`lambda`]), the local pipeline the CLI uses
//! ([`pipeline`]), the events both accept ([`events`]), the demo's sample data ([`sample`]),
//! and the health report's HTML page ([`report_page`]).

pub mod events;
pub mod lambda;
pub mod pipeline;
pub mod repartition;
pub mod report_page;
pub mod sample;
