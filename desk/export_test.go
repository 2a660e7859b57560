package desk

// RoutingLockClass is the first key of a queue's routing mark, for tests
// that hold it to make a queue busy.
const RoutingLockClass = routingLockClass
