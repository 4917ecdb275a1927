listen = {
port = = 1
}
