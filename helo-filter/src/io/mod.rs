//! Small I/O helpers shared by the daemon's sockets.
pub mod line_reader;
pub mod notify;
pub mod raw_socket;
pub mod unix_socket;
