//! Packaging of the Caretaker agent; the roll-out issue fills this in.
