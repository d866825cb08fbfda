//! The log level, changeable at runtime (`PUT /api/v5/log`): `main` installs the subscriber
//! and hands its reload handle over here as a setter; the API calls [`set_level`].

use std::sync::{Mutex, OnceLock};

type Setter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static SETTER: OnceLock<Setter> = OnceLock::new();
static LEVEL: Mutex<String> = Mutex::new(String::new());

/// Called once by whoever installed the subscriber.
pub fn install(initial: &str, setter: Setter) {
    *LEVEL.lock().unwrap_or_else(|e| e.into_inner()) = initial.to_string();
    let _ = SETTER.set(setter);
}

/// The filter in force ("info", "warn,strait::link=debug", ...).
pub fn level() -> String {
    LEVEL.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Change the filter; Err names what is wrong with it (or that this process cannot change it).
pub fn set_level(spec: &str) -> Result<(), String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err("an empty level".into());
    }
    let setter = SETTER.get().ok_or("the log level of this process cannot be changed")?;
    setter(spec)?;
    *LEVEL.lock().unwrap_or_else(|e| e.into_inner()) = spec.to_string();
    tracing::info!(level = spec, "log level changed");
    Ok(())
}
