//! The descriptor limit every listener needs lifted: a node or router
//! holding thousands of long polls keeps a socket (a router: two) per waiter.

/// Lifts the soft `RLIMIT_NOFILE` to the hard limit (a no-op elsewhere than
/// Unix, or when it is already there).
pub fn raise_fd_limit() {
    #[cfg(unix)]
    // SAFETY: getrlimit/setrlimit on a local, fully initialised struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
