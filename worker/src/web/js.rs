//! Small helpers for reading and building plain JavaScript objects.

use js_sys::{Object, Reflect};
use wasm_bindgen::{JsCast, JsValue};

/// A plain object with these properties.
pub(crate) fn object(properties: &[(&str, JsValue)]) -> Object {
    let object = Object::new();
    for (key, value) in properties {
        // Setting a property on a fresh plain object cannot fail.
        let _ = Reflect::set(&object, &JsValue::from_str(key), value);
    }
    object
}

/// `object[key]`, `undefined` when absent or when `object` is no object.
pub(crate) fn get(object: &JsValue, key: &str) -> JsValue {
    Reflect::get(object, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

/// `object[key]` as a string.
pub(crate) fn get_string(object: &JsValue, key: &str) -> Result<String, String> {
    get(object, key)
        .as_string()
        .ok_or_else(|| format!("`{key}` must be a string"))
}

/// `object[key]` as a number.
pub(crate) fn get_number(object: &JsValue, key: &str) -> Result<f64, String> {
    get(object, key)
        .as_f64()
        .ok_or_else(|| format!("`{key}` must be a number"))
}

/// `object[key]` as a whole number in `0..=max`.
pub(crate) fn get_integer(object: &JsValue, key: &str, max: f64) -> Result<u64, String> {
    let value = get_number(object, key)?;
    if value.fract() != 0.0 || !(0.0..=max).contains(&value) {
        return Err(format!(
            "`{key}` must be a whole number from 0 to {max}, got {value}"
        ));
    }
    Ok(value as u64)
}

/// `object[key]` as an instance of `T`.
pub(crate) fn get_instance<T: JsCast>(object: &JsValue, key: &str) -> Result<T, String> {
    get(object, key)
        .dyn_into::<T>()
        .map_err(|_| format!("`{key}` has the wrong type"))
}

/// The text of a thrown JavaScript value, for errors and logs.
pub(crate) fn error_text(error: &JsValue) -> String {
    if let Some(error) = error.dyn_ref::<js_sys::Error>() {
        return String::from(error.message());
    }
    error.as_string().unwrap_or_else(|| format!("{error:?}"))
}
