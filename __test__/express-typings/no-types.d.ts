// What 'express' and Node's modules resolve to in tsconfig.standalone.json: nothing. A typing of
// trypema that used them would fail to compile there.
export {}
