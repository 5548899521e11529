//! The CNI 1.1 protocol: verbs, environment, versions, results and errors, and one plugin executor
