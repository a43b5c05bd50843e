//! The splice data path's staging: a pipe borrowed from the worker's pool while bytes are in
//! flight, moved in and out either by a direct non-blocking splice(2) after readiness or by
//! IORING_OP_SPLICE (each operation has both forms side by side here).
//!
//! Idle connections hold no pipe: a direction borrows one when it has bytes to move and gives
//! it back, empty, when it goes back to waiting for its source. That keeps pipe descriptors and
//! the per-user pipe quota proportional to the connections that are moving data, not to the
//! connections that exist.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use io_uring::squeue;

use super::super::ring::{Target, splice_sqe};
use crate::sys::pipe::{self, Pipe};

/// A worker's pool of empty pipes. Each relay asks for its own size (`-b`, or a service's
/// `buffer`), so an idle pipe is kept with the size it was asked for and only handed to a
/// direction that asks for that size.
#[derive(Debug)]
pub(crate) struct PipePool {
    idle: Vec<(usize, Pipe)>,
    max_idle: usize,
    /// Pipes created over the pool's life (for diagnostics).
    pub created: u64,
}

impl PipePool {
    pub(crate) fn new(max_idle: usize) -> PipePool {
        PipePool {
            idle: Vec::new(),
            max_idle,
            created: 0,
        }
    }

    /// An empty pipe asked for with `size`: a pooled one of that size, or a new one.
    pub(crate) fn take(&mut self, size: usize) -> io::Result<Pipe> {
        if let Some(i) = self.idle.iter().rposition(|(asked, _)| *asked == size) {
            return Ok(self.idle.swap_remove(i).1);
        }
        self.created += 1;
        Pipe::new(size)
    }

    /// Returns an *empty* pipe asked for with `size` to the pool. It is closed instead when
    /// the pool is full, or when the kernel gave it less than `size` (an unprivileged user
    /// over the pipe quota): closing it frees quota, so a later pipe may get the full size.
    pub(crate) fn give(&mut self, pipe: Pipe, size: usize) {
        if self.idle.len() < self.max_idle && pipe.capacity() >= size {
            self.idle.push((size, pipe));
        }
    }

    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.idle.len()
    }
}

/// A splice direction's pipe, present only while bytes move.
#[derive(Debug)]
pub(crate) struct PipeStage {
    pipe: Option<Pipe>,
    /// The size its relay asks for.
    size: usize,
}

impl PipeStage {
    pub(crate) fn new(size: usize) -> PipeStage {
        PipeStage { pipe: None, size }
    }

    /// Whether the direction holds no pipe now.
    pub(crate) fn is_idle(&self) -> bool {
        self.pipe.is_none()
    }

    /// Borrows a pipe before a fill; `Some(capacity)` when a new one was taken.
    pub(crate) fn ensure(&mut self, pool: &mut PipePool) -> io::Result<Option<usize>> {
        if self.pipe.is_some() {
            return Ok(None);
        }
        let pipe = pool.take(self.size)?;
        let capacity = pipe.capacity();
        self.pipe = Some(pipe);
        Ok(Some(capacity))
    }

    /// Gives the pipe back to the pool; the caller knows it is empty.
    pub(crate) fn release(&mut self, pool: &mut PipePool) {
        if let Some(pipe) = self.pipe.take() {
            pool.give(pipe, self.size);
        }
    }

    fn pipe(&self) -> &Pipe {
        self.pipe
            .as_ref()
            .expect("a filling or draining direction holds a pipe")
    }

    /// The most a fill may move: `max`, capped at the pipe's capacity.
    pub(crate) fn fill_len(&self, max: usize) -> usize {
        max.min(self.pipe().capacity())
    }

    /// Fill, direct form: splice(2) up to `max` bytes from `source` into the pipe now.
    pub(crate) fn fill_now(&self, source: BorrowedFd<'_>, max: usize) -> io::Result<usize> {
        pipe::splice(source, self.pipe().writer(), max)
    }

    /// Fill, io_uring form.
    pub(crate) fn fill_sqe(&self, source: Target<'_>, max: usize) -> squeue::Entry {
        splice_sqe(source, Target::Fd(self.pipe().writer()), max)
    }

    /// Drain, direct form: splice(2) `len` staged bytes to `sink` now.
    pub(crate) fn drain_now(&self, sink: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
        pipe::splice(self.pipe().reader(), sink, len)
    }

    /// Drain, io_uring form.
    pub(crate) fn drain_sqe(&self, sink: Target<'_>, len: usize) -> squeue::Entry {
        splice_sqe(Target::Fd(self.pipe().reader()), sink, len)
    }

    /// Reads what the pipe holds into `buf` (which is as long as the staged bytes) and gives
    /// the pipe back: the switch to the copy path. Err: the errno of a failed read.
    pub(crate) fn empty_into(&mut self, buf: &mut [u8], pool: &mut PipePool) -> Result<(), i32> {
        let mut result = Ok(());
        if let Some(pipe) = &self.pipe {
            let mut got = 0;
            while got < buf.len() {
                match pipe::read(pipe.reader().as_fd(), &mut buf[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        result = Err(e.raw_os_error().unwrap_or(libc::EIO));
                        break;
                    }
                }
            }
        }
        self.release(pool);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_and_bounds_idle_pipes() {
        let mut pool = PipePool::new(1);
        let a = pool.take(64 * 1024).unwrap();
        let b = pool.take(64 * 1024).unwrap();
        assert_eq!(pool.created, 2);
        assert_eq!(a.capacity(), 64 * 1024);
        pool.give(a, 64 * 1024);
        pool.give(b, 64 * 1024);
        assert_eq!(pool.idle(), 1, "the second pipe is closed, not pooled");
        let _c = pool.take(64 * 1024).unwrap();
        assert_eq!(pool.created, 2, "a pooled pipe is reused");
    }

    #[test]
    fn each_relay_gets_pipes_of_its_own_size_from_one_pool() {
        let mut pool = PipePool::new(4);
        let small = pool.take(64 * 1024).unwrap();
        let large = pool.take(256 * 1024).unwrap();
        assert_eq!(small.capacity(), 64 * 1024);
        assert_eq!(large.capacity(), 256 * 1024);
        pool.give(small, 64 * 1024);
        pool.give(large, 256 * 1024);
        let again = pool.take(256 * 1024).unwrap();
        assert_eq!(again.capacity(), 256 * 1024, "the pooled pipe of that size");
        assert_eq!(pool.created, 2);
        let other = pool.take(128 * 1024).unwrap();
        assert_eq!(
            other.capacity(),
            128 * 1024,
            "no pooled pipe of that size: a new one"
        );
        assert_eq!(pool.created, 3);
    }

    #[test]
    fn a_stage_borrows_a_pipe_only_while_bytes_move_and_empties_into_a_buffer() {
        let mut pool = PipePool::new(4);
        let mut stage = PipeStage::new(64 * 1024);
        assert!(stage.is_idle());
        assert_eq!(stage.ensure(&mut pool).unwrap(), Some(64 * 1024));
        assert_eq!(stage.ensure(&mut pool).unwrap(), None, "one pipe at a time");
        let source = Pipe::new(4096).unwrap();
        pipe::write(source.writer(), b"staged bytes").unwrap();
        assert_eq!(
            stage
                .fill_now(source.reader(), stage.fill_len(1 << 20))
                .unwrap(),
            12
        );
        let mut buf = [0u8; 12];
        stage.empty_into(&mut buf, &mut pool).unwrap();
        assert_eq!(&buf, b"staged bytes");
        assert!(stage.is_idle(), "the pipe went back to the pool");
        assert_eq!(pool.idle(), 1);
    }
}
