//! Registry semantics: uploads, blobs, manifests, tags, referrers, catalog.
