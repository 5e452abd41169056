//! The data-plane configuration document.
