//! The configuration: the file's sections, how it is read and located, the flags that
//! override it, and the one validation that `run`, `reload` and `config check` share.
pub mod duration;
mod file;
mod flags;
mod fleet_section;
mod locate;
mod policy_sections;
mod postfix_section;
mod replies;
mod sections;
mod source;
mod validate;

pub use file::*;
pub use flags::*;
pub use fleet_section::*;
pub use policy_sections::*;
pub use postfix_section::*;
pub use replies::*;
pub use sections::*;
pub use source::*;
pub use validate::*;
