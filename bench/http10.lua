-- wrk sends every request as HTTP/1.0 (no keep-alive): the server answers and closes,
-- and wrk opens a new connection for the next request. Used by `python -m bench`'s
-- "close" part; the request is built once per thread, as wrk's own is.
wrk.format = function()
  return "GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
end
