topics = { { match = '\0p:*', tracked = false } }
