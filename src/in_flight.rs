//! The process-wide cap on requests being proxied (`limits.max_concurrent_requests`).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Counts the requests in flight across all workers and refuses those
/// over the limit.
///
/// One compare-and-swap to enter and one subtraction to leave, on the only
/// counter the workers share per request. A tokio `Semaphore` enters as
/// cheaply, but its release takes the waiters' mutex every time, and
/// nothing here ever waits: a request over the limit is shed at once.
#[derive(Debug)]
pub struct InFlightCap {
    limit: usize,
    current: AtomicUsize,
}

/// One admitted request; dropping it frees the place.
#[derive(Debug)]
pub struct Admitted<'a>(&'a InFlightCap);

impl InFlightCap {
    pub fn new(limit: usize) -> InFlightCap {
        InFlightCap {
            limit,
            current: AtomicUsize::new(0),
        }
    }

    /// A place for one more request, or `None` at the limit.
    pub fn try_admit(&self) -> Option<Admitted<'_>> {
        // The count guards no other memory, so no ordering is needed.
        self.current
            .fetch_update(Relaxed, Relaxed, |n| (n < self.limit).then_some(n + 1))
            .ok()
            .map(|_| Admitted(self))
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::InFlightCap;

    #[test]
    fn admits_up_to_the_limit_and_frees_places_on_drop() {
        let cap = InFlightCap::new(2);
        let first = cap.try_admit().expect("first");
        let second = cap.try_admit().expect("second");
        assert!(cap.try_admit().is_none(), "a third is over the limit");

        drop(first);
        let third = cap.try_admit().expect("a freed place is reused");
        assert!(cap.try_admit().is_none());
        drop((second, third));
        assert!(cap.try_admit().is_some());
    }

    #[test]
    fn a_zero_limit_admits_nothing() {
        assert!(InFlightCap::new(0).try_admit().is_none());
    }
}
