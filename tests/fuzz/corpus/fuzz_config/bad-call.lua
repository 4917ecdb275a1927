os.execute('true')
io.write('x')
