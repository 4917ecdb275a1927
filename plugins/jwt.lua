-- plugins/jwt.lua: authenticate sockets with HS256 JSON Web Tokens.
-- The token comes from the connect params (options.param, "token") or the
-- Phoenix auth-token subprotocol (phoenix.js `authToken`).
return function(options)
  local secret = options.secret
  if type(secret) ~= "string" or secret == "" then
    error("plugin jwt: option secret must be a non-empty string", 0)
  end
  local param = options.param or "token"
  local id_claim = options.id_claim or "sub"
  local leeway = options.leeway_s or 0
  local required = options.required ~= false
  local copy = options.assigns_claims
  if type(param) ~= "string" then error("plugin jwt: option param must be a string", 0) end
  if type(id_claim) ~= "string" then error("plugin jwt: option id_claim must be a string", 0) end
  if type(leeway) ~= "number" or leeway < 0 then error("plugin jwt: option leeway_s must be a number >= 0", 0) end
  if copy ~= nil and type(copy) ~= "table" then error("plugin jwt: option assigns_claims must be a list", 0) end

  local json, crypto = herald.json, herald.crypto

  -- Returns the claims of a valid token, or nil and the refusal reason.
  local function verify(token)
    local h64, p64, s64 = token:match("^([%w_%-]+)%.([%w_%-]+)%.([%w_%-]+)$")
    if not h64 then return nil, "invalid token" end
    local header = json.decode(crypto.b64_decode(h64) or "")
    if type(header) ~= "table" or header.alg ~= "HS256" then return nil, "invalid token" end
    local expected = crypto.b64url_encode(crypto.hmac_sha256(secret, h64 .. "." .. p64))
    if not crypto.equal(expected, s64) then return nil, "invalid token" end
    local claims = json.decode(crypto.b64_decode(p64) or "")
    if type(claims) ~= "table" then return nil, "invalid token" end
    local now = herald.now()
    if type(claims.exp) == "number" and claims.exp <= now - leeway then return nil, "token expired" end
    if claims.exp ~= nil and type(claims.exp) ~= "number" then return nil, "invalid token" end
    if type(claims.nbf) == "number" and claims.nbf > now + leeway then return nil, "invalid token" end
    return claims
  end

  local M = {}
  function M.authenticate(req)
    local token = req.params[param] or req.token
    if not token or token == "" then
      if required then return nil, "missing token" end
      return -- no opinion: other hooks decide
    end
    local claims, why = verify(token)
    if not claims then return nil, why end
    local id = claims[id_claim]
    if type(id) ~= "string" and type(id) ~= "number" then return nil, "invalid token" end
    local assigns = {}
    if copy then
      for _, k in ipairs(copy) do assigns[k] = claims[k] end
    else
      for k, v in pairs(claims) do assigns[k] = v end
    end
    return { id = tostring(id), assigns = assigns }
  end
  return M
end
