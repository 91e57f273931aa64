//! Keeps a panic in one frame's work from ending the thread that serves every frame.
//!
//! The decoders, the engines and the snapshot renderer are large and partly foreign code; a
//! bug in one of them, reached by one odd frame, would otherwise end a decode worker, the
//! inference thread or the snapshot worker for good, and the daemon would go on answering
//! its health checks while scoring nothing. Each frame's work runs under [`catch`] instead:
//! the frame is refused with the panic's message, counted, and the next frame is served.

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Runs `work`, returning the panic's message instead of unwinding past the caller.
///
/// The work's state is not observed after a panic (the frame is dropped, the engine's plan is
/// immutable and each run starts its own state), which is why asserting unwind safety is sound.
pub fn catch<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(work)).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

/// The reason given for a frame whose `stage` panicked.
pub fn reason(stage: &str, message: &str) -> String {
    format!(
        "{stage} crashed on this frame ({message}); the frame is refused and the daemon goes on. \
         This is a bug in vigil or a library it uses: please report it with the frame"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message_and_a_value_passes_through() {
        assert_eq!(catch(|| 7), Ok(7));
        assert_eq!(catch(|| -> u8 { panic!("index {} out of range", 9) }), Err("index 9 out of range".into()));
        assert_eq!(catch(|| -> u8 { panic!("static") }), Err("static".into()));
        assert_eq!(catch(|| -> u8 { std::panic::panic_any(5u32) }), Err("a panic without a message".into()));
    }
}
