//! One lookup's result as the policy's checks read it.

/// The result of one DNS lookup as the policy's checks see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer<T> {
    /// The lookup was not made (check disabled or name not eligible).
    NotAsked,
    /// Records of the type exist.
    Records(Vec<T>),
    /// NXDOMAIN or an empty answer.
    NoRecords,
    /// Timeout, SERVFAIL or another error that says nothing about the name.
    TempFail,
}

impl<T> Answer<T> {
    /// The records, empty unless [`Answer::Records`].
    pub fn records(&self) -> &[T] {
        match self {
            Answer::Records(r) => r,
            _ => &[],
        }
    }

    /// Whether there is at least one record.
    pub fn has_records(&self) -> bool {
        !self.records().is_empty()
    }

    /// Whether the lookup failed temporarily.
    pub fn is_tempfail(&self) -> bool {
        matches!(self, Answer::TempFail)
    }
}
