limitz = {}
