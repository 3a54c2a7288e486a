//! The store traits' methods written once: each trait keeps its list in a macro, which hands it to `declare_methods` (the trait itself) or `forward_methods` (a handle that passes every call on).
//!
//! A handle in front of an engine (`reopen.rs`, a test's counting wrapper) has to implement
//! every trait method again just to pass it on. Written by hand, each signature stood three
//! times, and a method added to a trait but not to the handle silently ran the trait's default
//! over the forwarded methods instead of the engine's own. With the list in one macro per
//! trait (`store_methods`, `account_store_methods`, `incident_store_methods`,
//! `digest_store_methods`, `privacy_store_methods`), a method added there is both declared and
//! forwarded. Methods a handle must not forward (it answers them itself, or the trait's default
//! is right for it) are written in the trait outside the list.
//!
//! A list is ordinary trait-item syntax: `fn name(&self, arg: Type, ...) -> Ret;`, or with a
//! default body in place of the `;`. Its macro takes the name of the macro to hand it to, then
//! that macro's own leading tokens: `store_methods!(declare_methods)` inside the trait,
//! `store_methods!(forward_methods, via with;)` inside an impl, where `with` is the handle's
//! method that runs a closure on the engine (`fn with<T>(&self, f: impl FnOnce(&E) -> T) -> T`,
//! or returning `StoreResult<T>` from a closure that does).

/// Writes the listed methods into the trait as they are.
macro_rules! declare_methods {
    ($($item:tt)*) => { $($item)* };
}

/// Implements each listed method as `self.<via>(|engine| engine.<method>(args))`, default
/// bodies included (a handle forwards to the engine's own version, which may be better).
macro_rules! forward_methods {
    (via $via:ident;) => {};
    (
        via $via:ident;
        $(#[$m:meta])*
        fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;
        $($rest:tt)*
    ) => {
        fn $name(&self $(, $arg: $ty)*) -> $ret {
            self.$via(|engine| engine.$name($($arg),*))
        }
        forward_methods!(via $via; $($rest)*);
    };
    (
        via $via:ident;
        $(#[$m:meta])*
        fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty $default:block
        $($rest:tt)*
    ) => {
        forward_methods!(via $via; fn $name(&self $(, $arg: $ty)*) -> $ret; $($rest)*);
    };
}

/// For test wrappers outside this module (they are not in `#[macro_use]`'s reach).
#[cfg(test)]
pub(crate) use forward_methods;
