//! The configuration: the file's sections, how it is read and located, and the flags.
mod file;
mod sections;

pub use file::*;
pub use sections::*;
