//! The two directions of a connection, and [`PerDir`]: one value per direction, indexed by
//! [`Direction`] rather than by a bare 0 or 1.

use std::fmt;
use std::ops::{Index, IndexMut};

/// The two directions of a connection: first address to second, and back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Forward, Direction::Backward];

    pub fn index(self) -> usize {
        match self {
            Direction::Forward => 0,
            Direction::Backward => 1,
        }
    }

    pub fn from_index(i: usize) -> Direction {
        if i == 0 {
            Direction::Forward
        } else {
            Direction::Backward
        }
    }
}

/// One value per direction, indexed by [`Direction`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PerDir<T>([T; 2]);

impl<T> PerDir<T> {
    pub(crate) fn from_fn(mut f: impl FnMut(Direction) -> T) -> PerDir<T> {
        PerDir([f(Direction::Forward), f(Direction::Backward)])
    }

    pub(crate) fn values(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    pub(crate) fn into_values(self) -> std::array::IntoIter<T, 2> {
        self.0.into_iter()
    }

    /// (forward, backward).
    pub(crate) fn as_pair(&self) -> (&T, &T) {
        (&self.0[0], &self.0[1])
    }

    pub(crate) fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> PerDir<U> {
        PerDir([f(&self.0[0]), f(&self.0[1])])
    }
}

impl<T> Index<Direction> for PerDir<T> {
    type Output = T;
    fn index(&self, d: Direction) -> &T {
        &self.0[d.index()]
    }
}

impl<T> IndexMut<Direction> for PerDir<T> {
    fn index_mut(&mut self, d: Direction) -> &mut T {
        &mut self.0[d.index()]
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Forward => "first->second",
            Direction::Backward => "second->first",
        })
    }
}
