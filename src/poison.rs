//! Locks taken even when poisoned. A panic while a lock is held marks it
//! poisoned; the values smtp-shaper keeps behind locks (queues, caches,
//! counters, the current generation) are left whole at every point a
//! panic could happen, so the right answer is to go on with them rather
//! than to take the whole service down with one failed task. This is the
//! one place that says so.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// [`Mutex::lock`] that goes on past a poisoned lock (see the module notes).
pub trait LockRecovered<T> {
    fn lock_recovered(&self) -> MutexGuard<'_, T>;
}

impl<T> LockRecovered<T> for Mutex<T> {
    fn lock_recovered(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// [`RwLock::read`] and [`RwLock::write`] that go on past a poisoned lock.
pub trait RwLockRecovered<T> {
    fn read_recovered(&self) -> RwLockReadGuard<'_, T>;
    fn write_recovered(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T> RwLockRecovered<T> for RwLock<T> {
    fn read_recovered(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_recovered(&self) -> RwLockWriteGuard<'_, T> {
        self.write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
