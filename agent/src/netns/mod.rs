//! Pod network namespaces (filled by the netns work).
