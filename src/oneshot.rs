//! A single-use channel carrying one task's outcome back to its submitter.
//!
//! One allocation per task, an uncontended lock on each side, and a wake-up
//! only if the receiver is actually waiting: a general-purpose channel costs
//! several allocations and a notification per message.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

enum State<T> {
    /// No value yet; `waiting` says whether the receiver sleeps on `ready`.
    Pending {
        waiting: bool,
    },
    Sent(T),
    /// The sender was dropped without sending.
    Dropped,
    /// The receiver took the value.
    Taken,
}

struct Inner<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

impl<T> Inner<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // No code panics while holding the lock, so poisoning cannot carry
        // a half-written state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) struct Sender<T>(Option<Arc<Inner<T>>>);

pub(crate) struct Receiver<T>(Arc<Inner<T>>);

pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State::Pending { waiting: false }),
        ready: Condvar::new(),
    });
    (Sender(Some(inner.clone())), Receiver(inner))
}

impl<T> Sender<T> {
    pub(crate) fn send(mut self, value: T) {
        if let Some(inner) = self.0.take() {
            finish(&inner, State::Sent(value));
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if let Some(inner) = self.0.take() {
            finish(&inner, State::Dropped);
        }
    }
}

fn finish<T>(inner: &Inner<T>, outcome: State<T>) {
    let mut state = inner.lock();
    let waiting = matches!(*state, State::Pending { waiting: true });
    *state = outcome;
    drop(state);
    if waiting {
        inner.ready.notify_one();
    }
}

/// Why no value came.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RecvError {
    /// Not yet (only from `try_recv`).
    Empty,
    /// Never: the sender was dropped.
    Dropped,
}

impl<T> Receiver<T> {
    pub(crate) fn recv(&self) -> Result<T, RecvError> {
        let mut state = self.0.lock();
        loop {
            match take(&mut state) {
                Err(RecvError::Empty) => {
                    *state = State::Pending { waiting: true };
                    state = self.0.ready.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                other => return other,
            }
        }
    }

    pub(crate) fn try_recv(&self) -> Result<T, RecvError> {
        take(&mut self.0.lock())
    }
}

fn take<T>(state: &mut State<T>) -> Result<T, RecvError> {
    match std::mem::replace(state, State::Taken) {
        State::Sent(value) => Ok(value),
        State::Pending { waiting } => {
            *state = State::Pending { waiting };
            Err(RecvError::Empty)
        }
        State::Dropped | State::Taken => {
            *state = State::Dropped;
            Err(RecvError::Dropped)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_sent_before_and_after_the_receiver_waits() {
        let (tx, rx) = channel();
        tx.send(1);
        assert_eq!(rx.recv(), Ok(1));
        assert_eq!(rx.try_recv(), Err(RecvError::Dropped));

        let (tx, rx) = channel();
        let t = std::thread::spawn(move || rx.recv());
        std::thread::sleep(std::time::Duration::from_millis(20));
        tx.send(2);
        assert_eq!(t.join().unwrap(), Ok(2));
    }

    #[test]
    fn dropped_sender_wakes_the_receiver() {
        let (tx, rx) = channel::<i32>();
        assert_eq!(rx.try_recv(), Err(RecvError::Empty));
        let t = std::thread::spawn(move || rx.recv());
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(tx);
        assert_eq!(t.join().unwrap(), Err(RecvError::Dropped));
    }
}
