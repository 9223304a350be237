package mysql

import "sync"

// sessionInfo is what Begin learns about a pooled session that does not
// change while the session lives.
type sessionInfo struct {
	threadID        int64
	detachOnPrepare bool
}

// maxSessions bounds the cache: the pool may close connections without
// telling the driver (idle limits), and their entries are only dropped
// when the cache is cleared.
const maxSessions = 1024

// sessionCache remembers sessionInfo per driver connection (the value
// that (*sql.Conn).Raw hands out), so that a branch on a reused
// connection can skip the SELECT CONNECTION_ID() round trip. A driver
// connection is one server session for its whole life, and an entry keeps
// its key alive, so a key can never stand for another session.
type sessionCache struct {
	mu sync.Mutex
	m  map[any]sessionInfo
}

func (c *sessionCache) get(key any) (sessionInfo, bool) {
	if key == nil {
		return sessionInfo{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	info, ok := c.m[key]
	return info, ok
}

func (c *sessionCache) put(key any, info sessionInfo) {
	if key == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxSessions {
		c.m = make(map[any]sessionInfo)
	}
	c.m[key] = info
}

func (c *sessionCache) forget(key any) {
	if key == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, key)
}
